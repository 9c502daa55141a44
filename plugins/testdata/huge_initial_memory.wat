;; Hostile: declares 1 GiB of initial memory (16384 pages), to be allocated at instantiation.
(module
  (memory (export "memory") 16384)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "noop") (param i32 i32) (result i64) (i64.const 2)))
