;; response-suffix: appends a configured suffix to the text of every choice of a response.
;;
;; Entry `post_response` (see docs/plugin-abi.md):
;;   in:  {"response": {<OpenAI chat or text completion>}, "config": {"suffix": "..."}}
;;   out: {"action":"rewrite","response":{...}} or {"action":"allow"} (nothing to change)
;; In each choice, `message.content` (chat) and `text` (completions) get the suffix when they
;; are strings; everything else is copied byte for byte.
;;
;; It edits the JSON text itself: a JSON string's escaped text can be spliced into another JSON
;; string as is, so the suffix is inserted before each content's closing quote.
;; Built with the `wat` crate (tests/sandbox.rs); the committed .wasm must match this file.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "response")
  (data (i32.const 16) "config")
  (data (i32.const 32) "suffix")
  (data (i32.const 48) "choices")
  (data (i32.const 64) "message")
  (data (i32.const 80) "content")
  (data (i32.const 96) "text")
  (data (i32.const 112) "{\"action\":\"allow\"}") ;; 18 bytes
  (data (i32.const 144) "{\"action\":\"rewrite\",\"response\":") ;; 31 bytes
  (data (i32.const 176) "}")
  ;; ---- memory: a bump allocator above the constant data ----------------------------------
  ;; Everything a call allocates stays until the call ends (each call gets a fresh instance).
  (global $heap (mut i32) (i32.const 1024))
  (global $end (mut i32) (i32.const 0)) ;; one past the last byte of the input

  ;; Makes sure [0, $to) is inside the memory, growing it when needed.
  (func $ensure (param $to i32)
    (local $have i32)
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $to) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u (i32.add (i32.sub (local.get $to) (local.get $have)) (i32.const 65535))
                           (i32.const 16)))
              (i32.const -1))
          (then (unreachable))))))

  (func (export "las_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $ptr) (local.get $len)))
    (call $ensure (global.get $heap))
    (local.get $ptr))

  ;; Appends $len bytes from $src at the heap's top (the output under construction).
  (func $emit (param $src i32) (param $len i32)
    (call $ensure (i32.add (global.get $heap) (local.get $len)))
    (memory.copy (global.get $heap) (local.get $src) (local.get $len))
    (global.set $heap (i32.add (global.get $heap) (local.get $len))))

  ;; ---- JSON, as the host writes it (compact, canonical escapes) ------------------------
  ;; Positions are absolute addresses; -1 means "not there". Reading at or past $end gives 0.
  (func $at (param $p i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $p) (global.get $end))
      (then (i32.load8_u (local.get $p)))
      (else (i32.const 0))))

  (func $ws (param $p i32) (result i32)
    (local $c i32)
    (block $done
      (loop $more
        (local.set $c (call $at (local.get $p)))
        (br_if $done
          (i32.eqz (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32))
                                   (i32.eq (local.get $c) (i32.const 9)))
                           (i32.or (i32.eq (local.get $c) (i32.const 10))
                                   (i32.eq (local.get $c) (i32.const 13))))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $more)))
    (local.get $p))

  ;; $p at an opening quote: the position just after the closing quote.
  (func $str_end (param $p i32) (result i32)
    (local $c i32)
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $p) (global.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.eq (local.get $c) (i32.const 92)) ;; backslash: skip the escaped byte
          (then (local.set $p (i32.add (local.get $p) (i32.const 2))) (br $more)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br_if $more (i32.ne (local.get $c) (i32.const 34)))))
    (local.get $p))

  ;; $p at a value: the position just after it.
  (func $skip (param $p i32) (result i32)
    (local $c i32) (local $depth i32)
    (local.set $c (call $at (local.get $p)))
    (if (i32.eq (local.get $c) (i32.const 34))
      (then (return (call $str_end (local.get $p)))))
    (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
      (then
        (loop $more
          (if (i32.ge_u (local.get $p) (global.get $end)) (then (return (local.get $p))))
          (local.set $c (i32.load8_u (local.get $p)))
          (if (i32.eq (local.get $c) (i32.const 34))
            (then (local.set $p (call $str_end (local.get $p))) (br $more)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
            (then (local.set $depth (i32.add (local.get $depth) (i32.const 1)))))
          (if (i32.or (i32.eq (local.get $c) (i32.const 125)) (i32.eq (local.get $c) (i32.const 93)))
            (then
              (local.set $depth (i32.sub (local.get $depth) (i32.const 1)))
              (if (i32.eqz (local.get $depth)) (then (return (local.get $p))))))
          (br $more))))
    ;; a number or a literal: up to the next delimiter
    (block $done
      (loop $more
        (local.set $c (call $at (local.get $p)))
        (br_if $done (i32.eqz (local.get $c)))
        (br_if $done (i32.eq (local.get $c) (i32.const 44)))
        (br_if $done (i32.eq (local.get $c) (i32.const 125)))
        (br_if $done (i32.eq (local.get $c) (i32.const 93)))
        (br_if $done (i32.le_u (local.get $c) (i32.const 32)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $more)))
    (local.get $p))

  (func $memeq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $more
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $more)))
    (i32.const 0))

  ;; $obj at a value: if it is an object with the key ($k, $klen), the position of its value.
  (func $key (param $obj i32) (param $k i32) (param $klen i32) (result i32)
    (local $p i32) (local $ks i32) (local $ke i32)
    (if (i32.lt_s (local.get $obj) (i32.const 0)) (then (return (i32.const -1))))
    (if (i32.ne (call $at (local.get $obj)) (i32.const 123)) (then (return (i32.const -1))))
    (local.set $p (call $ws (i32.add (local.get $obj) (i32.const 1))))
    (loop $member
      (if (i32.ne (call $at (local.get $p)) (i32.const 34)) (then (return (i32.const -1))))
      (local.set $ks (i32.add (local.get $p) (i32.const 1)))
      (local.set $p (call $str_end (local.get $p)))
      (local.set $ke (i32.sub (local.get $p) (i32.const 1)))
      (local.set $p (call $ws (local.get $p)))
      (if (i32.ne (call $at (local.get $p)) (i32.const 58)) (then (return (i32.const -1))))
      (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1))))
      (if (i32.and (i32.eq (i32.sub (local.get $ke) (local.get $ks)) (local.get $klen))
                   (call $memeq (local.get $ks) (local.get $k) (local.get $klen)))
        (then (return (local.get $p))))
      (local.set $p (call $ws (call $skip (local.get $p))))
      (if (i32.ne (call $at (local.get $p)) (i32.const 44)) (then (return (i32.const -1))))
      (local.set $p (call $ws (i32.add (local.get $p) (i32.const 1))))
      (br $member))
    (i32.const -1))

  ;; $arr at a value: if it is a non-empty array, the position of its first element.
  (func $first (param $arr i32) (result i32)
    (local $p i32)
    (if (i32.lt_s (local.get $arr) (i32.const 0)) (then (return (i32.const -1))))
    (if (i32.ne (call $at (local.get $arr)) (i32.const 91)) (then (return (i32.const -1))))
    (local.set $p (call $ws (i32.add (local.get $arr) (i32.const 1))))
    (if (result i32) (i32.eq (call $at (local.get $p)) (i32.const 93))
      (then (i32.const -1))
      (else (local.get $p))))

  ;; $p at an array element: the position of the next one, or -1.
  (func $next (param $p i32) (result i32)
    (local.set $p (call $ws (call $skip (local.get $p))))
    (if (result i32) (i32.eq (call $at (local.get $p)) (i32.const 44))
      (then (call $ws (i32.add (local.get $p) (i32.const 1))))
      (else (i32.const -1))))

  (func $is_string (param $p i32) (result i32)
    (i32.and (i32.ge_s (local.get $p) (i32.const 0))
             (i32.eq (call $at (local.get $p)) (i32.const 34))))

  (global $cursor (mut i32) (i32.const 0))

  ;; If $s is a string, copies the response up to its closing quote, then the suffix.
  (func $splice (param $s i32) (param $suf i32) (param $suflen i32)
    (local $q i32)
    (if (i32.eqz (call $is_string (local.get $s))) (then (return)))
    (local.set $q (i32.sub (call $str_end (local.get $s)) (i32.const 1)))
    ;; splices go front to back; a field that comes before the last splice is left alone
    (if (i32.lt_u (local.get $q) (global.get $cursor)) (then (return)))
    (call $emit (global.get $cursor) (i32.sub (local.get $q) (global.get $cursor)))
    (call $emit (local.get $suf) (local.get $suflen))
    (global.set $cursor (local.get $q)))

  (func (export "post_response") (param $ptr i32) (param $len i32) (result i64)
    (local $root i32) (local $resp i32) (local $suf i32) (local $suflen i32)
    (local $choice i32) (local $out i32)
    (global.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $root (call $ws (local.get $ptr)))
    (local.set $resp (call $key (local.get $root) (i32.const 0) (i32.const 8)))
    (local.set $suf
      (call $key (call $key (local.get $root) (i32.const 16) (i32.const 6)) (i32.const 32) (i32.const 6)))
    (local.set $choice
      (call $first (call $key (local.get $resp) (i32.const 48) (i32.const 7))))
    (block $allow
      (br_if $allow (i32.eqz (call $is_string (local.get $suf))))
      (local.set $suflen (i32.sub (i32.sub (call $str_end (local.get $suf)) (i32.const 1))
                                  (i32.add (local.get $suf) (i32.const 1))))
      (local.set $suf (i32.add (local.get $suf) (i32.const 1)))
      (br_if $allow (i32.le_s (local.get $suflen) (i32.const 0)))
      (br_if $allow (i32.lt_s (local.get $choice) (i32.const 0)))
      (local.set $out (global.get $heap))
      (call $emit (i32.const 144) (i32.const 31))
      (global.set $cursor (local.get $resp))
      (loop $more
        (call $splice
          (call $key (call $key (local.get $choice) (i32.const 64) (i32.const 7)) (i32.const 80) (i32.const 7))
          (local.get $suf) (local.get $suflen))
        (call $splice (call $key (local.get $choice) (i32.const 96) (i32.const 4))
          (local.get $suf) (local.get $suflen))
        (local.set $choice (call $next (local.get $choice)))
        (br_if $more (i32.ge_s (local.get $choice) (i32.const 0))))
      (call $emit (global.get $cursor) (i32.sub (call $skip (local.get $resp)) (global.get $cursor)))
      (call $emit (i32.const 176) (i32.const 1))
      (return (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
                      (i64.extend_i32_u (i32.sub (global.get $heap) (local.get $out))))))
    (i64.or (i64.shl (i64.const 112) (i64.const 32)) (i64.const 18))) ;; {"action":"allow"}
)
