"""CelebA-HQ: the jxie/celeba-hq parquet layout, face embedding of its images, and the clusters layout."""
