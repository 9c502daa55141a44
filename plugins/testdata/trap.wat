;; Hostile: traps (an unreachable instruction) after scribbling on its memory; a later call must
;; see a fresh instance.
(module
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 0) "{\"calls\":0}")
  (func (export "las_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "crash") (param i32 i32) (result i64)
    (i32.store8 (i32.const 9) (i32.const 57)) ;; "{\"calls\":9}"
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (unreachable))
  ;; Returns the data segment: {"calls":0} in a fresh instance, {"calls":9} if state leaked.
  (func (export "calls") (param i32 i32) (result i64) (i64.const 11)))
