"""The one exception type for mistakes a user can make (bad path, bad config, bad file).

The CLI turns it into one clear sentence on stderr and exit code 2, without a traceback.
Library callers can catch it like any exception.
"""


class LmlabError(Exception):
    """A problem with the user's input, described in one sentence that names the fix."""
