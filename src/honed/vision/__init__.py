"""Vision components: detection post-processing and friends."""
