-- Catalog views over the COMMITTED HyperFace last-mile artifacts (facelake.curation.catalog);
-- facelake.lake.catalog.refresh_section runs this file. Placeholders as in hyperface_views.sql: the committed
-- files, or an empty relation of the same columns. Each view carries the variant as `part`. All are EMPTY
-- unless generator weights (Arc2Face on Stable Diffusion 1.5) are configured: no generator weights ship.

-- One row per generated image (hyperface_aligned): key, sample_id, shard, identity_id, identity_index, index,
-- status (aligned | no_face | several_faces | unreadable), reason, faces, face_score, face_box, landmarks,
-- aligned_box, detector.
CREATE OR REPLACE VIEW hyperface_aligned AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {aligned_source};
COMMENT ON VIEW hyperface_aligned IS
    'HyperFace generated images after RetinaFace + ArcFace-template alignment, one row per image with its status. Empty unless generator weights are configured and the curation job ran';

-- One row per audited crop (hyperface_identity_audit): own_cosine to its identity's reference embedding,
-- the nearest other identity and its cosine, inconsistent (own_cosine below curation.consistency).
CREATE OR REPLACE VIEW hyperface_identity_audit AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {audit_images_source};
COMMENT ON VIEW hyperface_identity_audit IS
    'HyperFace identity audit, one row per aligned crop: cosine to its own reference, nearest other identity. Empty unless generator weights are configured and the curation job ran';

-- One row per identity: images, mean/min cosine, inconsistent images, spread (mean pairwise cosine
-- distance), centroid cosine, the nearest other identity and the margin to it.
CREATE OR REPLACE VIEW hyperface_identity_audit_identities AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {audit_identities_source};
COMMENT ON VIEW hyperface_identity_audit_identities IS
    'HyperFace identity audit, one row per identity: consistency, spread, nearest other identity. Empty unless generator weights are configured and the curation job ran';

-- The generated x real pairs found (hyperface_leakage): generated_key, identity_id, real_set, real_key,
-- cosine, rank within its set (1 = most similar), top_k, above_threshold.
CREATE OR REPLACE VIEW hyperface_leakage AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {pairs_source};
COMMENT ON VIEW hyperface_leakage IS
    'HyperFace leakage: the most similar generated x real pairs per real set. Empty unless generator weights are configured and the curation job ran';

-- The cleaned training set (hyperface_dataset): sample_id, key, identity_id, index, label (integer class),
-- path (identities/<identity_id>/<index>.jpg), shard (webdataset shard).
CREATE OR REPLACE VIEW hyperface_dataset AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {dataset_source};
COMMENT ON VIEW hyperface_dataset IS
    'HyperFace training set, one row per kept image with its integer label and paths. Empty unless generator weights are configured and the curation job ran';

-- The aligned images left out of the dataset, and why (inconsistent, leaking, or both).
CREATE OR REPLACE VIEW hyperface_dataset_removed AS
SELECT * EXCLUDE (filename), hyperface_part(filename) AS part
FROM {removed_source};
COMMENT ON VIEW hyperface_dataset_removed IS
    'HyperFace images removed from the training set: inconsistent and/or leaking. Empty unless generator weights are configured and the curation job ran';
