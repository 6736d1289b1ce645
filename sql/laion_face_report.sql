-- Per-part report over the LAION-Face catalog (facelake.laion.catalog.run_report).
-- One row per part with any committed meta, images or detections partition; a column is NULL while the
-- artifact it comes from is not committed for that part. success_rate counts the samples that were sent to
-- the downloader (opted-out samples never are); tar_bytes is the size of the committed webdataset tars.
WITH parts AS (
    SELECT DISTINCT part
    FROM laion_face_partitions
    WHERE artifact IN ('meta', 'images', 'detections') AND regexp_full_match(part, '[0-9]{5}')
),
meta AS (
    SELECT part, count(*) AS meta_rows
    FROM laion_face_meta
    GROUP BY part
),
samples AS (
    SELECT
        part,
        count(*) AS samples,
        count(*) FILTER (WHERE status = 'success') AS success,
        count(*) FILTER (WHERE status = 'failed_to_download') AS failed_to_download,
        count(*) FILTER (WHERE status = 'failed_to_resize') AS failed_to_resize,
        count(*) FILTER (WHERE status = 'opted_out') AS opted_out
    FROM laion_face_samples
    GROUP BY part
),
tars AS (
    SELECT part, CAST(sum(size) AS BIGINT) AS tar_bytes
    FROM laion_face_files
    WHERE artifact = 'images' AND regexp_full_match(path, 'shards/[0-9]+\.tar')
    GROUP BY part
),
faces AS (
    SELECT part, count(*) AS released_faces
    FROM laion_face_detections
    GROUP BY part
),
downloaded_faces AS (
    SELECT d.part, count(*) AS faces_on_downloaded
    FROM laion_face_detections AS d
    JOIN laion_face_samples AS s ON s.part = d.part AND s.sample_id = d.sample_id
    WHERE s.status = 'success'
    GROUP BY d.part
),
joined AS (
    SELECT
        p.part,
        m.meta_rows,
        s.samples,
        s.success,
        s.failed_to_download,
        s.failed_to_resize,
        s.opted_out,
        s.success / nullif(s.samples - s.opted_out, 0) AS success_rate,
        CASE WHEN s.part IS NOT NULL THEN coalesce(t.tar_bytes, 0) END AS tar_bytes,
        f.released_faces,
        CASE WHEN s.part IS NOT NULL AND f.part IS NOT NULL THEN coalesce(df.faces_on_downloaded, 0) END
            AS faces_on_downloaded
    FROM parts AS p
    LEFT JOIN meta AS m ON m.part = p.part
    LEFT JOIN samples AS s ON s.part = p.part
    LEFT JOIN tars AS t ON t.part = p.part
    LEFT JOIN faces AS f ON f.part = p.part
    LEFT JOIN downloaded_faces AS df ON df.part = p.part
)
SELECT *, faces_on_downloaded / nullif(success, 0) AS mean_faces_per_downloaded
FROM joined
ORDER BY part
