"""What the Beam path (the stages) and the sliced runs' workers (`transforms.spill`)
both use, with public names: one rule, one implementation.

- `modes`: the batching modes (fixed windows, sessions, one batch per event), each a
  strategy: its Beam windows, its bounded grouping, its grouping in memory.
- `merging`: a device's batches of one window merged into its outbound batch.
- `windows`: the windowing of live batches and files, and an outbound batch's time.
- `files`: file formats, file namings, writing a file once, packing files.
- `shuffled`: what crosses a shuffle (compressed batches and their coder).
- `spill_files`: the files a sliced run spills to local disk.
"""
