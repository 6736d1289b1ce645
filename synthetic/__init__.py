"""Fixture builders in the real formats (synthetic LAION worlds, the local image server, real-photo
CelebA-HQ sources, synthetic identities, the LAION-Face authors' reference conversion), used by the tests,
the demo and the benchmarks. Installed with the project (the demo uses it at run time); the engine
(``facelake``) never imports it."""
