"""Generate and inspect key files: Paillier key pairs, site identities and the roster.

    python -m train.keys generate --bits 2048 --out keys/     # keys/ (0700 if new): public.json (0644), private.json (0600)
    python -m train.keys identity --cid site0 --out keys/site0  # keys/site0/identity.json (0600): one site's signing key
    python -m train.keys roster --site site0=<hex> --site site1=<hex> --out roster.json
    python -m train.keys identities --clients 3 --out keys/   # keys/site0..site2/identity.json and keys/roster.json (trials)
    python -m train.keys show FILE                             # kind, size or sites, fingerprint (never a private key)

A site makes its own identity and sends the line ``site0=<hex>`` it prints (its public key) to
whoever assembles the roster; the roster's fingerprint goes into the run config
(``roster-fingerprint``), and every party checks the roster it holds against it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from torchhefl.exceptions import MalformedMessageError
from torchhefl.secure import DEFAULT_KEY_BITS, InsecureKeyWarning, generate_keypair, load_private_key, load_public_key, strict_json
from torchhefl.secure.files import private_directory
from torchhefl.secure.identity import IDENTITY_FILE, IDENTITY_KIND, ROSTER_FILE, ROSTER_KIND, Roster, SiteIdentity

__all__ = ["main"]

_SITE_LINE = re.compile(r"\s*([^=\s]+)\s*=\s*([0-9A-Fa-f]{64})\s*")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train.keys", description="Generate and inspect torchhefl key files.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="generate a Paillier key pair")
    g.add_argument("--bits", type=int, default=DEFAULT_KEY_BITS, help=f"modulus size (default {DEFAULT_KEY_BITS})")
    g.add_argument("--out", type=Path, required=True, help="directory for public.json and private.json")
    g.add_argument("--allow-insecure", action="store_true", help="permit keys under 2048 bits (tests only)")
    g.add_argument("--force", action="store_true", help="overwrite existing key files")
    i = sub.add_parser("identity", help="make one site's signing key (identity.json)")
    i.add_argument("--cid", required=True, help="the site's name, site<partition-id> (e.g. site0)")
    i.add_argument("--out", type=Path, required=True, help=f"the site's key folder (0700 if new) for {IDENTITY_FILE}")
    i.add_argument("--force", action="store_true", help=f"overwrite an existing {IDENTITY_FILE} (its key is lost)")
    r = sub.add_parser("roster", help="assemble the roster of the sites' public signing keys")
    r.add_argument("--site", action="append", default=[], metavar="NAME=HEX", help="a site and its public key, as `identity` prints it (repeatable)")
    r.add_argument("--sites-file", action="append", default=[], type=Path, metavar="FILE",
                   help="a file of NAME=HEX lines (blank lines and # comments are skipped; repeatable)")
    r.add_argument("--out", type=Path, required=True, help=f"the roster file to write (e.g. {ROSTER_FILE})")
    r.add_argument("--force", action="store_true", help="overwrite an existing roster file")
    m = sub.add_parser("identities", help="make site0..site{n-1}'s identities and their roster in one folder (trials, tests)")
    m.add_argument("--clients", type=int, required=True, help="number of sites (at least 2)")
    m.add_argument("--out", type=Path, required=True, help=f"folder for site<i>/{IDENTITY_FILE} and {ROSTER_FILE}")
    m.add_argument("--force", action="store_true", help="overwrite existing identity and roster files")
    s = sub.add_parser("show", help="print a key, identity or roster file's kind and fingerprint")
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


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ValueError(f"{', '.join(existing)} already {verb}; pass --force to overwrite")


def _write_identity(cid: str, folder: Path) -> SiteIdentity:
    identity = SiteIdentity(cid)
    private_directory(folder)  # mode 0700 if new; refused if others may write to it
    identity.save(folder / IDENTITY_FILE)
    return identity


def _identity(args) -> None:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    path = out / IDENTITY_FILE
    _refuse_overwrite([path], args.force)
    identity = _write_identity(args.cid, out)
    print(f"wrote {path} (private, mode 0600): site {identity.cid}'s signing key; it never leaves this site")
    print(f"public key: {identity.public_bytes().hex()}")
    print("send this line to whoever assembles the roster (python -m train.keys roster --site ...):")
    print(f"{identity.cid}={identity.public_bytes().hex()}")


def _site_entry(text: str, where: str) -> tuple[str, bytes]:
    match = _SITE_LINE.fullmatch(text)
    if match is None:
        raise ValueError(f"{where}: expected NAME=HEX (a site name and 64 hexadecimal digits), got {text.strip()!r}")
    return match.group(1), bytes.fromhex(match.group(2))


def _print_roster(roster: Roster) -> None:
    print(f"sites: {', '.join(roster.sites)}")
    print(f"threshold: {roster.threshold} (a strict majority of {len(roster)})")
    print(f"fingerprint: {roster.fingerprint}")


def _roster(args) -> None:
    entries = [_site_entry(s, "--site") for s in args.site]
    for file in args.sites_file:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append(_site_entry(line, f"{file}:{number}"))
    sites: dict[str, bytes] = {}
    for cid, key in entries:
        if cid in sites:
            raise ValueError(f"site {cid} is given twice")
        sites[cid] = key
    roster = Roster(sites)  # checks the names, the keys, at least 2 sites and no key twice
    _refuse_overwrite([args.out], args.force)
    roster.save(args.out)
    print(f"wrote {args.out} (public): give it to every site and to the server")
    _print_roster(roster)
    print(f'run config: roster-fingerprint="{roster.fingerprint}"')


def _identities(args) -> None:
    if args.clients < 2:
        raise ValueError(f"--clients {args.clients}: a roster lists at least 2 sites")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    names = [f"site{i}" for i in range(args.clients)]
    _refuse_overwrite([out / ROSTER_FILE, *(out / cid / IDENTITY_FILE for cid in names)], args.force)
    private_directory(out)
    roster = Roster.of(_write_identity(cid, out / cid) for cid in names)
    roster.save(out / ROSTER_FILE)
    print(f"wrote {out / names[0] / IDENTITY_FILE} .. {out / names[-1] / IDENTITY_FILE} (private, mode 0600; "
          f"each to its own site) and {out / ROSTER_FILE} (public)")
    _print_roster(roster)
    print(f'run config: roster-fingerprint="{roster.fingerprint}"')


def _show(args) -> None:
    try:
        doc = strict_json.loads(args.file.read_bytes(), what=str(args.file))
    except MalformedMessageError:
        doc = None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == IDENTITY_KIND:
        identity = SiteIdentity.load(args.file)
        print("kind: identity (private key not shown)")
        print(f"site: {identity.cid}")
        print(f"public key: {identity.public_bytes().hex()}")
        return
    if kind == ROSTER_KIND:
        print("kind: roster")
        _print_roster(Roster.load(args.file))
        return
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


_COMMANDS = {"generate": _generate, "identity": _identity, "roster": _roster, "identities": _identities, "show": _show}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", UserWarning)  # e.g. a key folder others can read: printed below
            warnings.simplefilter("ignore", InsecureKeyWarning)  # insecure sizes are reported on stdout instead
            _COMMANDS[args.command](args)
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
