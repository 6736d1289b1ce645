"""HyperFace image generation with Arc2Face on diffusers: loading the released folders (``layout``), the
identity conditioning (``conditioning``), the generator's identity space (``space``), per-image seeds and
embedding noise (``seeds``), the generator (``generator``), webdataset shards (``shards``), the per-shard
stage (``stage``), the contact sheet (``contact_sheet``) and its settings (``settings``). Never imports
dagster."""
