;; Hostile: reads the clock without being granted the clock capability.
(module
  (import "las" "clock_ms" (func $clock (result i64)))
  (memory (export "memory") 1)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "now") (param i32 i32) (result i64)
    (drop (call $clock))
    (i64.const 0)))
