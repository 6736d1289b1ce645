"""HyperFace image generation with Arc2Face on diffusers, one module per role:

``layout`` (the released folders, resolved through the model registry), ``conditioning`` (the "id" token
hook), ``space`` (the generator's identity space), ``generator`` (loading and sampling), ``seeds`` (per-image
seeds, embedding noise, latents), ``identities`` (the packed identities and their generation shards),
``requests`` (per-image requests, batched rendering), ``shards`` (webdataset tars and their index),
``stage`` (the resumable per-shard commit), ``contact_sheet`` and ``settings``. Never imports dagster.
"""
