"""Pure rules of supervision: no I/O, no clock of their own, each a function of its arguments.

The restart policy, the hang verdict, how an attempt ended (one rank or many),
which checkpoint to resume from, the job states and the causes they name.
"""
