"""`python -m bnexp.status`: the command users type; the code is bnexp.sweep.status's."""

from bnexp.sweep.status import main

if __name__ == "__main__":
    main()
