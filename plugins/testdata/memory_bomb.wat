;; Hostile: grows its memory a page at a time until something stops it.
(module
  (memory (export "memory") 1)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "grow") (param i32 i32) (result i64)
    (loop $more
      (drop (memory.grow (i32.const 1)))
      (br $more))
    (unreachable)))
