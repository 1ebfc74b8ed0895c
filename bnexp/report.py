"""`python -m bnexp.report`: the command users type; the code is bnexp.sweep.report's."""

from bnexp.sweep.report import main

if __name__ == "__main__":
    main()
