"""`python -m slimdiff ...` (also `accelerate launch -m slimdiff distill ...`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
