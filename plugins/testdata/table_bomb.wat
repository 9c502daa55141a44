;; Hostile: grows a function table an element at a time until something stops it.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "grow") (param i32 i32) (result i64)
    (loop $more
      (drop (table.grow $t (ref.null func) (i32.const 1000)))
      (br $more))
    (unreachable)))
