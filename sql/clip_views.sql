-- Catalog views over the COMMITTED CLIP artifacts (facelake.clip.catalog); facelake.lake.catalog.refresh_section
-- runs this file.
--
-- Each placeholder is filled with read_parquet([<files listed by the committed manifests>], filename = true,
-- union_by_name = true), or with an empty relation of the same columns while nothing is committed, so every
-- view exists and every query runs. Every artifact lives under <root>/clip/<asset>/<part>/; each view carries
-- the asset name as `asset` and the partition key as `part`.

-- The asset (i = 1) or partition key (i = 2) of a file under <root>/clip/<asset>/<part>/ (every CLIP asset's
-- name contains "clip").
CREATE OR REPLACE MACRO clip_key(path, i) AS
    regexp_extract(path, '/clip/([a-z0-9_]*clip[a-z0-9_]*)/([^/]+)/', i);

-- One row per embedded image, clip-retrieval's metadata_<i>.parquet: image_path (the sample key or file
-- name), caption, url, SAMPLE_ID (NULL where unknown), width, height (of the original image), the embedding
-- space (embedder_name, embedder_dimension, embedder_weights_sha256, embedder_random_init, embedder_config),
-- and shard_id = i (the row's vectors are img_emb/img_emb_<i>.npy, in the same order).
CREATE OR REPLACE VIEW clip_embeddings_metadata AS
SELECT
    * EXCLUDE (filename),
    clip_key(filename, 1) AS asset,
    clip_key(filename, 2) AS part,
    CAST(regexp_extract(filename, 'metadata_([0-9]+)\.parquet$', 1) AS INTEGER) AS shard_id
FROM (
    SELECT * FROM {laion_face_clip_embeddings_metadata}
    UNION ALL BY NAME SELECT * FROM {celebahq_clip_embeddings_metadata}
    UNION ALL BY NAME SELECT * FROM {sfhq_clip_embeddings_metadata}
);

-- One row per committed embeddings partition and space: how many images, and whether the weights were
-- random (embedder_random_init: such embeddings are for testing the pipeline only).
CREATE OR REPLACE VIEW clip_spaces AS
SELECT
    asset,
    part,
    embedder_name,
    embedder_dimension,
    embedder_weights_sha256,
    embedder_random_init,
    count(*) AS images
FROM clip_embeddings_metadata
GROUP BY ALL
ORDER BY asset, part;

-- One row per index partition: method = 'exact' (rows <= exact_search_max_rows: search by blocked products,
-- no index needed; reason says so) or 'faiss' (IVF-Flat, nlist, nprobe chosen by measured recall_at_10
-- against exact search), the embeddings' space label, random_init and the random-weights warning.
CREATE OR REPLACE VIEW clip_index AS
SELECT * EXCLUDE (filename, part), clip_key(filename, 1) AS asset, clip_key(filename, 2) AS part
FROM (
    SELECT * FROM {laion_face_clip_index_summary}
);

-- The hits of each probe prompt shown on the index's contact sheets: query, rank, score (the one float64
-- similarity), row, method and the hit's metadata.
CREATE OR REPLACE VIEW clip_index_probe_hits AS
SELECT * EXCLUDE (filename), clip_key(filename, 1) AS asset, clip_key(filename, 2) AS part
FROM (
    SELECT * FROM {laion_face_clip_index_probe_hits}
);

-- The keep-list: one row per kept image (images in no group, and one per group of near-duplicates by the
-- documented rule), with the embeddings partition it comes from (source = '<asset>:<part>').
CREATE OR REPLACE VIEW clip_near_duplicates_keep AS
SELECT
    * EXCLUDE (filename),
    split_part(source, ':', 1) AS source_asset,
    split_part(source, ':', 2) AS source_part,
    clip_key(filename, 1) AS asset,
    clip_key(filename, 2) AS part
FROM {near_duplicates_keep};

-- Every image in a group of near-duplicates: group, kept, the kept image's row and the similarity to it.
CREATE OR REPLACE VIEW clip_near_duplicates_groups AS
SELECT
    * EXCLUDE (filename),
    split_part(source, ':', 1) AS source_asset,
    split_part(source, ':', 2) AS source_part,
    clip_key(filename, 1) AS asset,
    clip_key(filename, 2) AS part
FROM {near_duplicates_groups};

-- Every pair with similarity above the threshold (row_a < row_b), with both keys and sources.
CREATE OR REPLACE VIEW clip_near_duplicates_pairs AS
SELECT * EXCLUDE (filename), clip_key(filename, 1) AS asset, clip_key(filename, 2) AS part
FROM {near_duplicates_pairs};

COMMENT ON VIEW clip_embeddings_metadata IS
    'One row per CLIP-embedded image (clip-retrieval metadata) with its embedding space; vectors in img_emb_<shard_id>.npy';
COMMENT ON VIEW clip_spaces IS 'One row per committed CLIP embeddings partition: its space, random weights or not, images';
COMMENT ON VIEW clip_index IS 'One row per CLIP search index partition: exact or faiss, why, and the measured recall';
COMMENT ON VIEW clip_index_probe_hits IS 'The hits of the probe prompts shown on the CLIP index''s contact sheets';
COMMENT ON VIEW clip_near_duplicates_keep IS 'The CLIP near-duplicate keep-list: one row per kept image';
COMMENT ON VIEW clip_near_duplicates_groups IS 'Every image in a group of CLIP near-duplicates, kept or not';
COMMENT ON VIEW clip_near_duplicates_pairs IS
    'Every pair of images whose CLIP similarity exceeds the near-duplicate threshold (empty when none does)';
