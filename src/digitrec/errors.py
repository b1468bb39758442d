"""The one exception type users see: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """A mistake in the user's input (a file, a row, a setting); never a bug in the pipeline."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; continuing would only write a garbage submission."""
