;; Hostile: the entry never returns. The sandbox must end it on fuel or on the timeout.
(module
  (memory (export "memory") 1)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "spin") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (unreachable)))
