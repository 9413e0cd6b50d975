"""The web demo's entry point: `python demo.py --help`. The app lives in captioner/demo/app.py."""
import sys

from captioner.demo.app import main

if __name__ == "__main__":
    sys.exit(main())
