;; Hostile: a start function would run at instantiation, before any metering; refused.
(module
  (memory (export "memory") 1)
  (func $spin (loop $l (br $l)))
  (start $spin)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "noop") (param i32 i32) (result i64) (i64.const 0)))
