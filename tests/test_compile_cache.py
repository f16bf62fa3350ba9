"""The persistent compilation cache a comparison turns on (smml_jax/train/compile_cache.py)."""

import jax

from smml_jax.train.compile_cache import use_compile_cache


def test_a_cache_is_turned_on_only_where_the_process_chose_none(tmp_path):
  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  try:
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "chosen"))
    assert use_compile_cache(tmp_path / "compare") == str(tmp_path / "chosen")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "chosen")

    jax.config.update("jax_compilation_cache_dir", None)
    assert use_compile_cache(tmp_path / "compare") == str(tmp_path / "compare")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "compare")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert not (tmp_path / "compare").exists()  # nothing is written before the first compile
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
