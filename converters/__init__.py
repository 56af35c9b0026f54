"""Model conversion: graph preparation (`prepare`), FP16 (`fp16`) and INT8 Q/DQ (`int8`) behind one accuracy gate
(`gate`, judged with the daemon's task heads), `compare`, and the typed conversion report (`report`).
`convert.convert_model` chains the stages. Pruning and TensorRT engine building are not here yet.
"""
