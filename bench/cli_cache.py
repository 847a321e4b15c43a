"""``bench cache ls|verify|clear``: the stage cache's commands and their parser (the cache itself is
``bench.stage_cache``)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.paths import REPO


def cmd_cache(a) -> int:
    from bench.stage_cache import StageCache, check_key_prefix, key_matches

    cache = StageCache(a.cache or (a.results or REPO / "results") / "cache")
    if a.cache_command == "ls":
        return _cache_ls(cache)
    try:
        for k in a.keys:
            check_key_prefix(k)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.cache_command == "verify":
        return _cache_verify(cache, a.keys, key_matches)
    if not (a.keys or a.stage or a.partial or a.all):
        print("error: say what to clear: KEY..., --stage NAME, --partial or --all", file=sys.stderr)
        return 2
    removed = cache.clear(a.keys or None, a.stage, a.partial)
    if a.keys and not removed:
        print(f"error: no cache entry matches {' '.join(a.keys)} (see `bench cache ls`)", file=sys.stderr)
        return 2
    print(f"removed {len(removed)} stage(s), {sum(e['bytes'] for e in removed) / 1e6:.1f} MB from {cache.root}")
    return 0


def used_by(rows: list[dict]) -> str:
    """``minicity: cag_uda[stage1], source_only`` — the suite rows that use a stage (from the cache's index)."""
    by_suite: dict[str, list[str]] = {}
    for r in rows:
        name = r["method"] + (f"[{r['variant']}]" if r.get("variant") else "") + (f"@{r['target']}" if r.get("target")
                                                                                  else "")
        names = by_suite.setdefault(r["suite"], [])
        if name not in names:
            names.append(name)
    return "; ".join(f"{s}: {', '.join(sorted(n))}" for s, n in by_suite.items()) or "?"


def _cache_ls(cache) -> int:
    """One line per entry: state, size, seed, the method/variant rows using it, the key."""
    entries, users = cache.entries(), cache.users()
    for e in entries:
        m = e["meta"]
        rows = users.get(e["key"].split(".corrupt-")[0], [])
        seeds = sorted({r["seed"] for r in rows}) if rows else [m.get("seed", "?")]  # an unseeded stage: several
        print(f"{e['state']:8s} {e['bytes'] / 1e6:9.1f} MB  seed {','.join(map(str, seeds)):>3}  {e['key']}  "
              f"[{used_by(rows)}]" + (f"  ({e['meta_error']})" if e["meta_error"] else ""))
    total = sum(e["bytes"] for e in entries) / 1e6
    print(f"{len(entries)} stage(s), {total:.1f} MB under {cache.root}  ([suite: method[variant]] = the rows that "
          "use each stage, as recorded by `bench run`)")
    return 0


def _cache_verify(cache, keys, key_matches) -> int:
    """Hash every file of every done entry against its DONE record; a corrupt entry is reported file by file and
    moved aside, so the next run recomputes it."""
    done = [e for e in cache.entries() if e["state"] == "done" and (not keys or any(key_matches(e["key"], k)
                                                                                      for k in keys))]
    bad = 0
    for e in done:
        with cache.lock(e["key"]):
            problems = cache.verify(e["key"], full=True)
            if problems:
                bad += 1
                aside = cache.move_aside(e["key"])
        if problems:
            print(f"corrupt  {e['key']}: moved to {aside.name}, the next run recomputes it")
            for line in problems:
                print(f"         {line}")
    print(f"{len(done)} done stage(s) verified under {cache.root}: {len(done) - bad} intact, {bad} corrupt")
    return 1 if bad else 0


def add_cache_parsers(sub) -> None:
    """``bench cache ls|verify|clear``."""
    cache = sub.add_parser("cache", help="the stage cache").add_subparsers(dest="cache_command", required=True)
    for cname, chelp in (("ls", "list cached stages (done, partial or corrupt) and their sizes"),
                         ("verify", "hash every file of the done stages against their DONE record; move corrupt "
                          "ones aside (the next run recomputes them)"),
                         ("clear", "delete cached stages")):
        c = cache.add_parser(cname, help=chelp)
        c.add_argument("--results", type=Path, help="results root (default: <repo>/results)")
        c.add_argument("--cache", type=Path, help="cache root (default: <results>/cache)")
        c.set_defaults(func=cmd_cache, keys=[])
        if cname == "verify":
            c.add_argument("keys", nargs="*", help="only these keys (default: every done stage)")
    # the loop's last parser is clear's: what to delete
    c.add_argument("keys", nargs="*", help="keys as `bench cache ls` prints them, or a key's stage part "
                   "(source_only-train: every entry of that stage)")
    c.add_argument("--stage", help="delete every entry of this stage name (e.g. source_only.train)")
    c.add_argument("--partial", action="store_true", help="only unfinished stages")
    c.add_argument("--all", action="store_true", help="everything")
