-- Catalog views over the COMMITTED CelebA-HQ artifacts (facelake.celebahq.catalog);
-- facelake.lake.catalog.refresh_section runs this file. Its identity clusters are the views of
-- identity_clusters_views.sql (celebahq_identity_clusters, celebahq_identity_centroids).
--
-- Placeholders read the committed files only (facelake.lake.catalog: an empty relation with the same
-- columns while none is committed). Every artifact lives under <root>/celebahq/<artifact>/<part>/ (part
-- 'all'); each view carries the part as `part`.

-- The partition key of a file under <root>/celebahq/<artifact>/<part>/...
CREATE OR REPLACE MACRO celebahq_part(path) AS
    regexp_extract(path, '/celebahq/[a-z_]+/([^/]+)/', 1);

-- The index of the source images (celebahq_images): file_name, source_file (the released parquet file it is
-- in) and source_row; the images stay in the source files.
CREATE OR REPLACE VIEW celebahq_images AS
SELECT * EXCLUDE (filename), celebahq_part(filename) AS part
FROM {index_source};
COMMENT ON VIEW celebahq_images IS
    'The CelebA-HQ source images: file_name, the released parquet file and row it is in';

-- The primary (largest) face of each image (celebahq_face_embeddings): file_name, face_box, face_score,
-- faces_detected, embedding (unit vector) and the embedder's provenance.
CREATE OR REPLACE VIEW celebahq_face_embeddings AS
SELECT * EXCLUDE (filename), celebahq_part(filename) AS part
FROM {embeddings_source};
COMMENT ON VIEW celebahq_face_embeddings IS
    'Identity embedding of the largest face of each CelebA-HQ image, with the embedder''s provenance';

-- The images in which the detector found no face: file_name, source_file, source_row, reason.
CREATE OR REPLACE VIEW celebahq_no_face AS
SELECT * EXCLUDE (filename), celebahq_part(filename) AS part
FROM {no_face_source};
COMMENT ON VIEW celebahq_no_face IS
    'CelebA-HQ images in which the detector found no face, and why (no identity embedding, no cluster)';
