"""``emoedge profiles list|show|delete|export|import``: the per-person profiles on this device."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge.verbs import add_verb


def register(sub: Any) -> None:
    parser = add_verb(
        sub, "profiles", "list, show, delete, export or import per-person profiles (edge.profiles)",
        "  emoedge profiles list\n"
        "  emoedge profiles show alice --model speech\n"
        "  emoedge profiles export alice --model speech --out alice-speech.json\n"
        "  emoedge profiles import alice-speech.json\n"
        "  emoedge profiles delete alice --model speech",
    )
    parser.add_argument("action", choices=["list", "show", "delete", "export", "import"])
    parser.add_argument("target", nargs="?", help="person (show, delete, export) or file (import)")
    parser.add_argument("--model", help="model name (show, delete, export; list: only this model)")
    parser.add_argument("--out", help="export: the file to write")
    parser.add_argument("--state", help="state folder (default: EMOEDGE_STATE or the user's state folder)")
    parser.add_argument("--models", help="models folder (import checks the profile against the installed model)")
    parser.add_argument("--json", action="store_true", help="show/list as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge import profiles as P
    from edge.errors import ConfigError

    if args.action == "list":
        rows = []
        for path in P.list_profiles(args.state, args.model):
            try:
                prof = P.read_profile_file(path)
                rows.append({"person": prof.person, "model": prof.model, "sha256": prof.model_sha256[:12],
                             "adapted": prof.adapted, "updated": prof.updated, "file": str(path)})
            except P.ProfileError as exc:
                rows.append({"person": path.stem, "model": path.parent.name, "error": str(exc), "file": str(path)})
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no profiles in {P.state_dir(args.state) / 'profiles'}")
        for r in [] if args.json else rows:
            state = r.get("error") or f"{'adapted' if r['adapted'] else 'population'}, model sha256 {r['sha256']}, updated {r['updated']}"
            print(f"{r['model']:>8}  {r['person']:<16} {state}")
        return 0
    if not args.target:
        raise ConfigError(f"profiles {args.action}: needs a {'file' if args.action == 'import' else 'person'}")
    if args.action == "import":
        model = None
        try:
            from edge.card import load_model

            model = load_model(P.read_profile_file(args.target).model, models=args.models)
        except P.ProfileError:
            raise
        except Exception as exc:  # no such model installed: store it, it is checked again when used
            print(f"profiles import: cannot check against the installed model ({exc})", file=sys.stderr)
        path = P.import_profile(args.target, model, args.state)
        print(f"imported to {path}")
        return 0
    if not args.model:
        raise ConfigError(f"profiles {args.action}: --model NAME is needed")
    if args.action == "delete":
        print(f"deleted {P.delete_profile(args.target, args.model, args.state)}")
        return 0
    path = P.profile_path(args.target, args.model, args.state)
    if not path.is_file():
        raise P.ProfileError(f"no profile of '{args.target}' for model '{args.model}' in {path.parent}")
    prof = P.read_profile_file(path)
    if args.action == "export":
        if not args.out:
            raise ConfigError("profiles export: --out FILE is needed")
        import os

        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(prof.to_json(), f)
        print(f"exported {path} to {args.out}")
        return 0
    summary = {
        "person": prof.person, "model": prof.model, "model_sha256": prof.model_sha256, "created": prof.created,
        "updated": prof.updated, "normalisation_samples": prof.norm.n, "file": str(path),
        "heads": {k: {"adapted": h.adapted, "reason": h.reason, "counts": h.counts, "blend_weight": h.strength}
                  for k, h in prof.heads.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{prof.person} / {prof.model} (sha256 {prof.model_sha256[:12]}), created {prof.created}, "
              f"updated {prof.updated}, normalised over {prof.norm.n} samples; {path}")
        for k, h in summary["heads"].items():
            counts = ", ".join(f"{c} {n}" for c, n in h["counts"].items() if n)
            print(f"  {k}: {'adapted' if h['adapted'] else 'population'} ({counts}); {h['reason']}")
    return 0
