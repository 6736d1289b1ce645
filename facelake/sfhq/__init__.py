"""SFHQ (seed ``000``): synthetic 1024² faces with 110 landmarks, 19-class parsing maps and pretrained features.

Modules by role: ``layout`` (the part's folders, its index and the problems table), ``settings`` (part
locations and the ONE declared, ASSUMED landmark index table), ``reader`` (threaded per-file reading with
per-file problems), ``landmarks``, ``segmentation``, ``features`` (restricted unpickling), ``faces``
(largest-face identity embeddings, a HyperFace gallery source), ``plots`` and ``report`` (the exploratory
report and ``describe``), ``artifacts`` (lake locations and writing a stage's tables), ``geometry``.
"""
