"""Feature code shared by training (``edge.zoo``) and the runtime: one definition per modality."""
