"""The file contracts between the daemon and a training process.

Both sides import these modules; they hold no torch and no daemon internals.
Every file is written atomically (temp file + rename) or appended one line at a
time, so a reader never sees half a record, whatever is killed when.
"""
