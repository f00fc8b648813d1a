"""Generate and inspect Paillier key files.

    python -m train.keys generate --bits 2048 --out keys/     # keys/ (0700 if new): public.json (0644), private.json (0600)
    python -m train.keys show keys/public.json                 # kind, bits, fingerprint (never p or q)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import DEFAULT_KEY_BITS, InsecureKeyWarning, generate_keypair, load_private_key, load_public_key, strict_json
from torchhefl.secure.files import private_directory

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train.keys", description="Generate and inspect torchhefl Paillier key files.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="generate a key pair")
    g.add_argument("--bits", type=int, default=DEFAULT_KEY_BITS, help=f"modulus size (default {DEFAULT_KEY_BITS})")
    g.add_argument("--out", type=Path, required=True, help="directory for public.json and private.json")
    g.add_argument("--allow-insecure", action="store_true", help="permit keys under 2048 bits (tests only)")
    g.add_argument("--force", action="store_true", help="overwrite existing key files")
    s = sub.add_parser("show", help="print a key file's kind, size and fingerprint")
    s.add_argument("file", type=Path)
    return p


def _generate(args) -> None:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    pub, priv = out / "public.json", out / "private.json"
    if not args.force and (pub.exists() or priv.exists()):
        raise ValueError(f"{out} already holds key files; pass --force to overwrite them")
    public_key, private_key = generate_keypair(args.bits, allow_insecure=args.allow_insecure)
    private_directory(out)  # mode 0700 if new; refused if others may write to it
    public_key.save(pub)
    private_key.save(priv)
    print(f"wrote {pub} (public) and {priv} (private, mode 0600)")
    print(f"bits: {public_key.bits}")
    print(f"fingerprint: {public_key.fingerprint}")


def _show(args) -> None:
    try:
        doc = strict_json.loads(args.file.read_bytes(), what=str(args.file))
    except MalformedMessageError:
        doc = None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if isinstance(kind, str) and kind.endswith(".private"):
        key = load_private_key(args.file, allow_insecure=True).public_key
        print("kind: private (p and q not shown)")
    else:
        key = load_public_key(args.file, allow_insecure=True)
        print("kind: public")
    print(f"bits: {key.bits}")
    print(f"fingerprint: {key.fingerprint}")
    if key.bits < 2048:
        print("warning: shorter than 2048 bits, insecure")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", UserWarning)  # e.g. a key folder others can read: printed below
            warnings.simplefilter("ignore", InsecureKeyWarning)  # insecure sizes are reported on stdout instead
            (_generate if args.command == "generate" else _show)(args)
    except (OSError, ValueError, TypeError) as e:
        msg = e.strerror + f": {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
        print(f"python -m train.keys: error: {msg}", file=sys.stderr)
        return 2
    finally:
        for w in caught:
            print(f"python -m train.keys: warning: {w.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
