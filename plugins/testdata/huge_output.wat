;; Hostile: claims a 16 MiB output (its whole grown memory) for a host with a smaller output cap.
(module
  (memory (export "memory") 1)
  (func (export "las_alloc") (param i32) (result i32) (i32.const 0))
  (func (export "flood") (param i32 i32) (result i64)
    (drop (memory.grow (i32.const 255)))
    ;; (0 << 32) | 16 MiB
    (i64.const 16777216)))
