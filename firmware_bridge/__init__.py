"""The link to sensor firmware: the frame protocol (``protocol``), the serial transport (``link``), sources
(``sources``: cameras, microphones, boards, replay) and virtual boards (``simulator``, ``simulated_boards``).
See ``docs/layout.md`` for what each module owns."""
