-- Catalog views over the COMMITTED LAION-Face parquet artifacts; facelake.lake.catalog.refresh_section runs this file.
--
-- Each *_source placeholder is filled with either
--     read_parquet([<files listed by the committed manifests>], filename = true, union_by_name = true)
-- or, while no partition of that artifact is committed, an empty relation with the same columns (and a
-- filename column), so every view exists and every query runs. Files never come from a glob: files of
-- uncommitted attempts and shards are never read. Every view carries the partition key as `part`.

-- The partition key (00000…00031) of a file under <root>/laion_face/<artifact>/<part>/…
CREATE OR REPLACE MACRO laion_face_part(path) AS
    regexp_extract(path, '/laion_face/[a-z_]+/([0-9]{5})/', 1);

-- The part's LAION-Face rows of laion400m-meta: SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, similarity.
CREATE OR REPLACE VIEW laion_face_meta AS
SELECT * EXCLUDE (filename), laion_face_part(filename) AS part
FROM {meta_source};

-- One row per SAMPLE_ID per part with the final status of its download (samples.parquet):
-- sample_id, status (success | failed_to_download | failed_to_resize | opted_out), error_message,
-- shard_id, key (webdataset key, NULL unless success), attempts.
CREATE OR REPLACE VIEW laion_face_samples AS
SELECT * EXCLUDE (filename), laion_face_part(filename) AS part
FROM {samples_source};

-- img2dataset's per-shard rows of the committed shards (SAMPLE_ID, key, status, error_message, width,
-- height, original_width, original_height, exif, sha256, url, caption, NSFW, similarity, LICENSE), one row
-- per attempt: a retried sample appears in every shard that tried it; its final status is in
-- laion_face_samples.
CREATE OR REPLACE VIEW laion_face_download AS
SELECT
    * EXCLUDE (filename),
    laion_face_part(filename) AS part,
    CAST(regexp_extract(filename, '/([0-9]+)\.parquet$', 1) AS INTEGER) AS shard_id
FROM {download_source};

-- The released detections, one row per face: sample_id, face_index (0 = best score), box [x1, y1, x2, y2],
-- landmarks [x0, y0, …, x4, y4], score. Joins the other views on (part, sample_id). Parquet stores the
-- fixed-size lists as lists: cast back to arrays, as in facelake.laion.detections.DETECTIONS_SCHEMA.
CREATE OR REPLACE VIEW laion_face_detections AS
SELECT
    * EXCLUDE (filename) REPLACE (CAST(box AS FLOAT[4]) AS box, CAST(landmarks AS FLOAT[10]) AS landmarks),
    laion_face_part(filename) AS part
FROM {detections_source};

-- Our own RetinaFace detections of the downloaded images (laion_face_detected), one row per face: the columns
-- of laion_face_detections plus detector and threshold, and shard_id (the webdataset shard the image is in).
-- Boxes and landmarks are in original pixels.
CREATE OR REPLACE VIEW laion_face_detected AS
SELECT
    * EXCLUDE (filename) REPLACE (CAST(box AS FLOAT[4]) AS box, CAST(landmarks AS FLOAT[10]) AS landmarks),
    laion_face_part(filename) AS part,
    CAST(regexp_extract(filename, '/([0-9]+)\.parquet$', 1) AS INTEGER) AS shard_id
FROM {detected_source};
COMMENT ON VIEW laion_face_detected IS
    'Our RetinaFace detections of the downloaded images (laion_face_detected), one row per face';

-- Identity embeddings of the faces in laion_face_detected (laion_face_embeddings), one row per face:
-- sample_id, key, face_index, embedding (unit float32 vector, its length the embedder's dimension), the
-- embedder's provenance (embedder_name, embedder_dimension, embedder_weights_sha256, embedder_random_init,
-- embedder_same_identity_cosine_distance), and shard_id. Joins laion_face_detected on
-- (part, sample_id, face_index).
CREATE OR REPLACE VIEW laion_face_embeddings AS
SELECT
    * EXCLUDE (filename),
    laion_face_part(filename) AS part,
    CAST(regexp_extract(filename, '/([0-9]+)\.parquet$', 1) AS INTEGER) AS shard_id
FROM {embeddings_source};
COMMENT ON VIEW laion_face_embeddings IS
    'Identity embeddings (unit vectors with the embedder''s provenance) of the faces in laion_face_detected';

COMMENT ON VIEW laion_face_meta IS 'The LAION-Face rows of laion400m-meta of each committed part';
COMMENT ON VIEW laion_face_samples IS
    'One row per SAMPLE_ID per part: the download''s final status (success, failed_to_download, failed_to_resize, opted_out)';
COMMENT ON VIEW laion_face_download IS 'img2dataset''s rows of the committed shards, one per download attempt';
COMMENT ON VIEW laion_face_detections IS 'The released LAION-Face detections, one row per face';
