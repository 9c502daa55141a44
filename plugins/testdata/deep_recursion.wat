;; Hostile: recurses without end. The engine's call depth limit must trap the call, never the
;; host's own stack.
(module
  (memory (export "memory") 1)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func $down (param $n i32) (result i32)
    (call $down (i32.add (local.get $n) (i32.const 1))))
  (func (export "recurse") (param i32 i32) (result i64)
    (drop (call $down (i32.const 0)))
    (i64.const 0)))
