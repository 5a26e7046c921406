"""The forwarder's rules as plain functions and values: no Beam, no network, no disk.

batch_json (JSON in and out), settings (the integration's settings), grouping
(devices, times, merging, sessions), naming (keys and date folders), packing
(files within bounds), dead_letters (the dead-letter record).
"""
