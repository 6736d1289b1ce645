-- Catalog views over the COMMITTED HyperFace artifacts (facelake.hyperface.catalog);
-- facelake.lake.catalog.refresh_section runs this file.
--
-- Placeholders read the committed files only (facelake.lake.catalog: an empty relation with the same
-- columns while none is committed). Every artifact lives under <root>/hyperface/<artifact>/<part>/ (the
-- gallery's part is 'all'; the reference embeddings' and images' part is the variant); each view carries it
-- as `part`.

-- The partition key of a file under <root>/hyperface/<artifact>/<part>/...
CREATE OR REPLACE MACRO hyperface_part(path) AS
    regexp_extract(path, '/hyperface/[a-z_]+/([^/]+)/', 1);

-- The gallery (hyperface_gallery): gallery_index, source (the asset partition or table it came from),
-- source_row, the sources' id columns where all have them (sample_id, key, face_index for LAION-Face),
-- embedding (unit vector) and the embedder's provenance: ONE embedding space.
CREATE OR REPLACE VIEW hyperface_gallery AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {gallery_source};
COMMENT ON VIEW hyperface_gallery IS
    'The HyperFace gallery: unit face embeddings of one space, with the source each row came from';

-- The packed reference embeddings of each variant (hyperface_reference_embeddings): identity_id
-- (<variant>-NNNNNNN, stable), identity_index, shard (identities-NNNNN.parquet), variant, embedding (unit
-- vector on the gallery's sphere) and the gallery's embedder provenance.
CREATE OR REPLACE VIEW hyperface_reference_embeddings AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {reference_source};
COMMENT ON VIEW hyperface_reference_embeddings IS
    'HyperFace reference identities of each variant: stable identity_id and the packed unit embedding';

-- The generated images of each variant (hyperface_images), one row per image of the webdataset shards
-- shards/NNNNN.tar: key, sample_id, shard, variant, identity_id, identity_index, index, latent_seed,
-- embedding_seed, beta, noise_cosine, the generator's provenance (generator_weights_sha256,
-- generator_random_init, generator_mode, scheduler, steps, guidance, height, width) and the identity space.
-- EMPTY unless generator weights (Arc2Face on Stable Diffusion 1.5) are configured and hyperface_images is
-- materialized: no generator weights ship, and the demo generates nothing without them.
CREATE OR REPLACE VIEW hyperface_images AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {images_source};
COMMENT ON VIEW hyperface_images IS
    'HyperFace generated images, one row per image (seeds, beta, generator provenance). Empty unless generator weights (Arc2Face, Stable Diffusion 1.5: models stable-diffusion-v1-5, arc2face in the model registry) are configured and hyperface_images is materialized; none ship with facelake';
