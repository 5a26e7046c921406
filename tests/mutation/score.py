"""The mutation score of each module mutmut mutates (setup.cfg, [mutmut]), from the
results of the last `mutmut run` (mutants/**/*.meta), with the mutants that no
behaviour can tell apart from the code (equivalent.txt, beside this file) left out.

    python -m tests.mutation.score [--minimum 90]

A mutant is killed when a test failed or ran out of time on it (an endless loop is a
behaviour the tests saw change). Survivors, and mutants that no test reached, are
listed by name: `mutmut show NAME` prints the change. Exits 1 if a module scores under
--minimum, if any mutant is neither killed nor listed as equivalent, or if
equivalent.txt names a mutant that no longer exists or was killed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = Path(__file__).with_name("equivalent.txt")
KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout"}
NOT_KILLED = {0: "survived", 5: "no tests", 33: "no tests"}


def equivalent_mutants(path: Path = EQUIVALENT) -> dict[str, tuple[str, str]]:
    """Mutant name → (the line as the mutant has it, why no behaviour can tell it
    apart), from lines `name | mutated line | why` (# comments)."""
    named = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, mutated, why = (part.strip() for part in line.split(" | ", 2))
            named[name] = (mutated, why)
    return named


def mutant_source(mutants: Path, name: str) -> str | None:
    """The mutant's function as mutmut wrote it into its copy of the module."""
    module, _, function = name.rpartition(".x")
    path = mutants / (module.replace(".", "/") + ".py")
    if not path.exists():
        return None
    text = path.read_text()
    start = text.find(f"def x{function}(")
    if start < 0:
        return None
    indent = start - (text.rfind("\n", 0, start) + 1)
    lines = text[start:].splitlines()
    for end, line in enumerate(lines[1:], 1):  # to the next line no deeper than the def
        if line.strip() and len(line) - len(line.lstrip()) <= indent and line[indent] not in ")]":
            return "\n".join(lines[:end])
    return "\n".join(lines)


def outcomes(mutants: Path) -> dict[str, dict[str, str]]:
    """Module → mutant name → its outcome (killed, timeout, survived, no tests, ...)."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        module = str(meta.relative_to(mutants))[:-len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            found[module] = {name: KILLED.get(code) or NOT_KILLED.get(code) or
                             ("not checked" if code is None else f"exit code {code}")
                             for name, code in codes.items()}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minimum", type=float, default=90.0,
                        help="the score (%%) every module must reach")
    parser.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    args = parser.parse_args(argv)
    equivalent = equivalent_mutants()
    results = outcomes(args.mutants)
    if not results:
        print(f"no mutmut results under {args.mutants}: run mutmut first", file=sys.stderr)
        return 1
    seen = {name: outcome for by_name in results.values() for name, outcome in by_name.items()}
    problems = [f"{name} is listed as equivalent but no longer exists" for name in equivalent
                if name not in seen]
    problems += [f"{name} is listed as equivalent but its change is no longer {mutated!r}"
                 for name, (mutated, _) in equivalent.items() if name in seen
                 and mutated not in (mutant_source(args.mutants, name) or "")]
    problems += [f"{name} is listed as equivalent but a test kills it" for name in equivalent
                 if seen.get(name) in ("killed", "timeout")]

    print(f"{'module':<34} {'mutants':>7} {'killed':>7} {'timeout':>7} {'equiv':>6} "
          f"{'left':>5} {'score':>7}")
    failing = []
    for module, by_name in results.items():
        counts = Counter(by_name.values())
        considered = {n: o for n, o in by_name.items() if n not in equivalent}
        killed = sum(o in ("killed", "timeout") for o in considered.values())
        score = 100.0 * killed / len(considered) if considered else 100.0
        left = sorted(n for n, o in considered.items() if o not in ("killed", "timeout"))
        print(f"{module:<34} {len(by_name):>7} {counts['killed']:>7} {counts['timeout']:>7} "
              f"{len(by_name) - len(considered):>6} {len(left):>5} {score:>6.1f}%")
        if score < args.minimum or left:
            failing.append((module, score, [f"{n} ({considered[n]})" for n in left]))
    for module, score, left in failing:
        below = f" < {args.minimum:g}%" if score < args.minimum else ""
        print(f"\n{module}: {score:.1f}%{below}; neither killed nor listed as equivalent:")
        print("\n".join(f"  {name}" for name in left))
    for problem in problems:
        print(f"equivalent.txt: {problem}", file=sys.stderr)
    return 1 if failing or problems else 0


if __name__ == "__main__":
    sys.exit(main())
