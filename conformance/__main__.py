"""`python -m conformance`: start a server on a fresh database and drive it as partners do.

1. `npm ci` the JavaScript clients and the validator (conformance/package-lock.json), if needed.
2. A fresh SQLite database (or `--database-url`, an empty PostgreSQL database), seeded with
   Synthea bundles through `vitasync-fhir import`; OAuth clients and a patient account made with
   `create-client` / `create-user`; `vitasync-fhir serve` on a free port.
3. The scenarios (pytest, conformance/scenarios/): fhirpy, the SMART `fhirclient`, and
   fhir-kit-client under Node.js, plus schemathesis over the OpenAPI description.
4. Every resource the server returned, checked by @medplum/core's validateResource.

Exit code 0 only when all of it passed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conformance.stage import HERE, SYNTHEA, free_port, prepare, serving


def npm_install() -> None:
    """Install the Node packages exactly as locked, unless they already are."""
    installed = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("conformance: npm (Node.js 18+) is needed for the JavaScript clients")
    # Two runs at once (pytest -n 2 runs SQLite and PostgreSQL side by side) install only once.
    with (HERE / ".npm-install.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
            return
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=HERE, check=True)


def validate(out: Path, *, selected: bool) -> bool:
    """@medplum/core's validator over every resource the scenarios got back. With no resources
    that is a failure, unless only some scenarios ran (`-k openapi` returns none)."""
    files = sorted(out.glob("*.ndjson"))
    if not files:
        print("validator: the scenarios returned no resources to check")
        return selected
    done = subprocess.run(
        ["node", str(HERE / "validate.mjs"), *map(str, files)],
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        print(f"validator crashed:\n{done.stdout}\n{done.stderr}")
        return False
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report["byType"].items()))
    print(f"validator (@medplum/core): {report['checked']} resources checked ({kinds})")
    for problem in report["problems"][:50]:
        print(f"  INVALID {problem['resource']} ({problem['where']}): {problem['issues']}")
    return report["invalid"] == 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conformance", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite)")
    parser.add_argument("--synthea", type=Path, default=SYNTHEA, help="Synthea sample folder")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k pharmacy)")
    args = parser.parse_args()
    if not args.synthea.is_dir():
        print(f"conformance: the Synthea sample data is not at {args.synthea}")
        return 2
    npm_install()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="vitasync-conformance-"))
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env, stage = prepare(folder, database_url=args.database_url, synthea=args.synthea, port=port)
    stage_file = folder / "stage.json"
    stage.save(stage_file)
    print(f"conformance: server at {stage.base} on {stage.database_url} (work folder {folder})")
    with serving(env, port, folder / "server.log"):
        os.environ["CONFORMANCE_STAGE"] = str(stage_file)
        scenarios = pytest.main(
            [
                str(HERE / "scenarios"),
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "addopts=-ra",
                *args.pytest_args,
            ]
        )
    valid = validate(Path(stage.out), selected=bool(args.pytest_args))
    passed = scenarios == 0 and valid
    print("conformance: " + ("PASSED" if passed else "FAILED"))
    if passed and args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
