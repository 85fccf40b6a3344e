"""The exceptions the CLI maps to exit codes: :class:`UserError` (bad input, one line, exit 2) and
:class:`Stopped` (a signal asked a run to stop, exit 128 + signal); the argument parser whose
errors are :class:`UserError` s."""

import argparse

__all__ = ["ArgumentParser", "OptionError", "StopSignal", "Stopped", "UserError"]


class UserError(ValueError):
    """Bad input from the user: a wrong shape, value, name, config key or data file.

    The message is a single line that names the problem and how to fix it.
    """


class OptionError(UserError):
    """A bad value of the keyword option ``option`` of a builder or estimator.

    The message starts with the option's name, so that a caller that took the option from a
    config can prefix it with the config's section (``model.noise ...``).
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


class Stopped(BaseException):
    """A signal (SIGTERM, SIGINT) asked the command to stop; finished work has been kept.

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StopSignal:
    """Set by a signal handler (``signum``); long loops poll it, keep their work, then raise
    :class:`Stopped`."""

    def __init__(self) -> None:
        self.signum = 0

    def __bool__(self) -> bool:
        return self.signum != 0


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one-line :class:`UserError` s naming ``--help``."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message}; see `{self.prog} --help`")
