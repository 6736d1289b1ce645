-- Catalog views over the COMMITTED SFHQ artifacts (facelake.sfhq.catalog); facelake.lake.catalog.refresh_section
-- runs this file.
--
-- Each placeholder is filled with read_parquet([<files listed by the committed manifests>], filename = true,
-- union_by_name = true), or with an empty relation of the same columns while nothing is committed, so every
-- view exists and every query runs. Every artifact lives under <root>/sfhq/<artifact>/<part>/ (part 1..4);
-- each view carries the part as `part`.

-- The artifact (i = 1) or part (i = 2) of a file under <root>/sfhq/<artifact>/<part>/...
CREATE OR REPLACE MACRO sfhq_key(path, i) AS
    regexp_extract(path, '/sfhq/([a-z_]+)/([1-4])/', i);

-- One row per name seen in any of the part's folders: name, has_images, has_landmarks, has_segmentations,
-- has_pretrained_features.
CREATE OR REPLACE VIEW sfhq_index AS
SELECT * EXCLUDE (filename), sfhq_key(filename, 2) AS part
FROM {index_source};

-- Every file a stage could not use, never dropped silently: name, modality (images, landmarks,
-- segmentations, pretrained_features), file (relative to the part; NULL for a missing one), kind (missing,
-- orphan, unexpected, unreadable, unsafe, invalid), problem (the reason), stage (the artifact that met it).
CREATE OR REPLACE VIEW sfhq_problems AS
SELECT * EXCLUDE (filename), sfhq_key(filename, 1) AS stage, sfhq_key(filename, 2) AS part
FROM (
    SELECT * FROM {index_problems}
    UNION ALL BY NAME SELECT * FROM {landmarks_problems}
    UNION ALL BY NAME SELECT * FROM {segmentations_problems}
    UNION ALL BY NAME SELECT * FROM {clip_features_problems}
    UNION ALL BY NAME SELECT * FROM {face_embeddings_problems}
);

-- One row per readable landmarks file: name, points (110 x [x, y] in 1024-px image coordinates), box
-- [x_min, y_min, x_max, y_max], valid (finite and inside the image; invalid_reason says why not), the eye
-- centres of the DECLARED, ASSUMED landmark index groups, inter_ocular and roll_deg.
CREATE OR REPLACE VIEW sfhq_landmarks AS
SELECT * EXCLUDE (filename), sfhq_key(filename, 2) AS part
FROM {landmarks_source};

-- One row per usable face-parsing map: frac_<class> for the 19 classes, face/hair/background fractions, eye
-- centroids of classes 4 and 5 (l_eye_x ... r_eye_y), inter_ocular, roll_deg, skin_center_x, hairline_y,
-- hairline_height (pixels from the hairline to the eye line), hairline_height_iod, hairline_coverage.
CREATE OR REPLACE VIEW sfhq_segmentations AS
SELECT * EXCLUDE (filename), sfhq_key(filename, 2) AS part
FROM {segmentations_source};

-- One row per image with usable shipped features, in clip-retrieval's metadata layout: image_path (the
-- image's URI), name, width, height, the embedding space (embedder_name, embedder_weights_sha256 ...:
-- 'unverified:...' when the model's weights were not here to hash), and shard_id = i of img_emb_<i>.npy.
CREATE OR REPLACE VIEW sfhq_clip_features AS
SELECT
    * EXCLUDE (filename),
    sfhq_key(filename, 2) AS part,
    CAST(regexp_extract(filename, 'metadata_([0-9]+)\.parquet$', 1) AS INTEGER) AS shard_id
FROM {clip_features_source};

-- Every pair of images whose features' similarity exceeds the near-duplicate threshold (SFHQ claims none
-- above ~0.92): name_a < name_b by row, similarity (float64), rows in the features layout.
CREATE OR REPLACE VIEW sfhq_near_duplicates AS
SELECT * EXCLUDE (filename), sfhq_key(filename, 2) AS part
FROM {near_duplicates_source};

-- The largest face of each image: name, face_box, face_score, faces_detected, embedding (unit vector) and
-- the embedder's provenance.
CREATE OR REPLACE VIEW sfhq_face_embeddings AS
SELECT * EXCLUDE (filename), sfhq_key(filename, 2) AS part
FROM {face_embeddings_source};

-- Images in which the detector found no face: name, reason.
CREATE OR REPLACE VIEW sfhq_no_face AS
SELECT * EXCLUDE (filename), sfhq_key(filename, 2) AS part
FROM {no_face_source};

-- Per part with a committed index: names in any folder, images, complete names (image + landmarks + map +
-- features), and problems in total and per stage.
CREATE OR REPLACE VIEW sfhq_parts AS
WITH names AS (
    SELECT
        part,
        count(*) AS names,
        count(*) FILTER (WHERE has_images) AS images,
        count(*) FILTER (
            WHERE has_images AND has_landmarks AND has_segmentations AND has_pretrained_features
        ) AS complete
    FROM sfhq_index
    GROUP BY part
), problems AS (
    SELECT
        part,
        count(*) AS problems,
        count(*) FILTER (WHERE stage = 'index') AS index_problems,
        count(*) FILTER (WHERE stage = 'landmarks') AS landmarks_problems,
        count(*) FILTER (WHERE stage = 'segmentations') AS segmentations_problems,
        count(*) FILTER (WHERE stage = 'clip_features') AS clip_features_problems,
        count(*) FILTER (WHERE stage = 'face_embeddings') AS face_embeddings_problems
    FROM sfhq_problems
    GROUP BY part
)
SELECT
    names.*,
    coalesce(problems.problems, 0) AS problems,
    coalesce(problems.index_problems, 0) AS index_problems,
    coalesce(problems.landmarks_problems, 0) AS landmarks_problems,
    coalesce(problems.segmentations_problems, 0) AS segmentations_problems,
    coalesce(problems.clip_features_problems, 0) AS clip_features_problems,
    coalesce(problems.face_embeddings_problems, 0) AS face_embeddings_problems
FROM names LEFT JOIN problems USING (part)
ORDER BY part;

COMMENT ON VIEW sfhq_index IS 'One row per name seen in any folder of an SFHQ part, with a flag per modality';
COMMENT ON VIEW sfhq_problems IS
    'Every SFHQ file a stage could not use, by name, kind and reason (empty when every file was usable)';
COMMENT ON VIEW sfhq_landmarks IS 'The 110 landmarks, face box, validity and eye-line measures of each SFHQ image';
COMMENT ON VIEW sfhq_segmentations IS 'Class fractions, eye centroids, roll and hairline measures of each SFHQ face-parsing map';
COMMENT ON VIEW sfhq_clip_features IS 'The shipped CLIP features of each SFHQ image (clip-retrieval metadata and space)';
COMMENT ON VIEW sfhq_near_duplicates IS
    'Pairs of SFHQ images whose features exceed the near-duplicate threshold (empty when SFHQ''s claim of none holds)';
COMMENT ON VIEW sfhq_face_embeddings IS 'Identity embedding of the largest face of each SFHQ image, with the provenance';
COMMENT ON VIEW sfhq_no_face IS 'SFHQ images in which the detector found no face (empty when every image has one)';
COMMENT ON VIEW sfhq_parts IS 'Per committed SFHQ part: names, complete images and problems by stage';
