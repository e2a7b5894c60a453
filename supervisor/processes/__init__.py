"""Process mechanics on this node: spawning and identifying processes, the attempt monitor, stacks, file events."""
