"""Face models: RetinaFace detection, 5-point alignment, identity embedders (dlib, ArcFace ONNX) with their
embedding-space profiles, and the per-shard detection and embedding stages."""
