;; Hostile: asks for WASI, which this host never provides.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "write") (param i32 i32) (result i64) (i64.const 0)))
