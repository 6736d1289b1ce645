-- Catalog views over the COMMITTED identity clusters of one dataset folder (facelake.clusters.catalog); the
-- catalog runs this file once per dataset that has identity clusters, {dataset} being its folder
-- (laion_face, celebahq).
--
-- Placeholders read the committed files only (facelake.lake.catalog: an empty relation with the same
-- columns while none is committed). The clusters live under <root>/{dataset}/identity_clusters/<part>/; each
-- view carries the partition key as `part`.

-- One row per clustered embedding (assignments.parquet): the embedding's id columns (laion_face: sample_id,
-- key, face_index; celebahq: file_name and the face's box, score and count), cluster_id (the identity; DBSCAN
-- noise points are singleton identities numbered after the clusters), cluster_size, dbscan_label (-1 =
-- noise), core, nn_index and nn_cosine (the nearest other embedding), centroid_cosine.
CREATE OR REPLACE VIEW {dataset}_identity_clusters AS
SELECT
    * EXCLUDE (filename),
    regexp_extract(filename, '/{dataset}/identity_clusters/([^/]+)/', 1) AS part
FROM {assignments};
COMMENT ON VIEW {dataset}_identity_clusters IS
    'One row per clustered face embedding of {dataset}: its identity (cluster_id, cluster_size), DBSCAN label, nearest neighbour and cosine to the centroid';

-- One row per identity (centroids.parquet): cluster_id, cluster_size, dbscan_cluster (false for a singleton
-- made from a noise point), embedding (the L2-normalised centroid, in the embedder's space) and the
-- embedder's provenance.
CREATE OR REPLACE VIEW {dataset}_identity_centroids AS
SELECT
    * EXCLUDE (filename),
    regexp_extract(filename, '/{dataset}/identity_clusters/([^/]+)/', 1) AS part
FROM {centroids};
COMMENT ON VIEW {dataset}_identity_centroids IS
    'One row per identity of {dataset}: its size and L2-normalised centroid, with the embedder''s provenance';
