"""What the client test scripts share (tests/openai/*.py, tests/ollama/*.py): `check` counts
checks and exits non-zero on the first that fails; `done` prints the line the Rust side
(`run_test_script`) waits for."""
import sys

_passed = 0


def check(cond, what):
    global _passed
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    _passed += 1


def done(name):
    print(f"{name}: {_passed} passed, 0 failed")
