"""Model conversion (graph preparation, pruning, FP16/INT8, engine building).

Nothing is implemented here yet: the conversion passes arrive with the converter issues.
"""
