"""Foundations every stage may use; nothing in here imports a pipeline stage.

    errors.py      InputError: bad input, always naming the file, line or field
    io.py          atomic writes; strict JSON reading (duplicate keys are errors)
    checkpoint.py  every safetensors checkpoint vstar writes or reads: one writer and one reader
                   per kind (generator, RL state, SASRec, text embeddings)
    layout.py      every path inside an experiment folder and the cache folder
    repro.py       seeding and run provenance (versions, git commit, host)
"""
