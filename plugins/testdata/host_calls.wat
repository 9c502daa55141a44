;; Uses every host function: logs its input, then returns {"clock":<ms>,"random":<bits>} built
;; from the two i64s as hex digits (enough to see them vary).
(module
  (import "las" "log" (func $log (param i32 i32)))
  (import "las" "clock_ms" (func $clock (result i64)))
  (import "las" "random_u64" (func $random (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"clock\":\"0000000000000000\",\"random\":\"0000000000000000\"}")
  (func (export "las_alloc") (param i32) (result i32) (i32.const 4096))
  (func $hex (param $at i32) (param $v i64)
    (local $i i32) (local $d i32)
    (local.set $i (i32.const 15))
    (loop $next
      (local.set $d (i32.wrap_i64 (i64.and (local.get $v) (i64.const 15))))
      (i32.store8 (i32.add (local.get $at) (local.get $i))
        (i32.add (local.get $d)
          (select (i32.const 48) (i32.const 87) (i32.lt_u (local.get $d) (i32.const 10)))))
      (local.set $v (i64.shr_u (local.get $v) (i64.const 4)))
      (br_if $next (i32.ge_s (local.tee $i (i32.sub (local.get $i) (i32.const 1))) (i32.const 0)))))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (call $log (local.get $ptr) (local.get $len))
    (call $hex (i32.const 10) (call $clock))
    (call $hex (i32.const 38) (call $random))
    (i64.const 56))
  ;; Logs a range outside its memory: the host must trap the call, not read out of bounds.
  (func (export "bad_log") (param i32 i32) (result i64)
    (call $log (i32.const 65530) (i32.const 100))
    (i64.const 0)))
