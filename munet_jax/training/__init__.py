"""Training: state, data-parallel step, mesh, checkpoints, summaries, input, loop (`loop.train`)."""
