;; prompt-guard: denies a chat request when a message's content contains a configured pattern.
;;
;; Entry `pre_request` (see docs/plugin-abi.md):
;;   in:  {"request": {<OpenAI chat body>}, "config": {"patterns": ["...", ...]}}
;;   out: {"action":"deny","reason":"..."} or {"action":"allow"}
;; A message's content is a string or a list of parts; parts with a "text" string are searched.
;; Matching is a substring search, ASCII case-insensitive; empty patterns are ignored.
;;
;; It searches the JSON text itself: the host writes compact JSON with canonical escapes (only
;; `"`, `\` and control characters are escaped, always the same way), so a pattern's escaped
;; text occurs in a content's escaped text exactly when the decoded pattern occurs in the decoded
;; content, provided matches start on a character boundary (never inside an escape).
;; Built with the `wat` crate (tests/sandbox.rs); the committed .wasm must match this file.
(module
  (memory (export "memory") 1)
  (data (i32.const 0) "request")
  (data (i32.const 16) "config")
  (data (i32.const 32) "patterns")
  (data (i32.const 48) "messages")
  (data (i32.const 64) "content")
  (data (i32.const 80) "text")
  (data (i32.const 96) "{\"action\":\"allow\"}") ;; 18 bytes
  (data (i32.const 128) "{\"action\":\"deny\",\"reason\":\"a message contains the blocked pattern \\\"") ;; 68 bytes
  (data (i32.const 208) "\\\"\"}") ;; 4 bytes
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

  ;; ASCII lower case of a byte.
  (func $lower (param $c i32) (result i32)
    (if (result i32) (i32.and (i32.ge_u (local.get $c) (i32.const 65))
                              (i32.le_u (local.get $c) (i32.const 90)))
      (then (i32.or (local.get $c) (i32.const 32)))
      (else (local.get $c))))

  (func $eq_ci (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $more
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (call $lower (i32.load8_u (local.get $a)))
                               (call $lower (i32.load8_u (local.get $b)))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $more)))
    (i32.const 0))

  ;; Whether the string at $s contains the (non-empty) string at $pat, both escaped text.
  (func $contains (param $s i32) (param $pat i32) (result i32)
    (local $i i32) (local $se i32) (local $pb i32) (local $pl i32)
    (local.set $i (i32.add (local.get $s) (i32.const 1)))
    (local.set $se (i32.sub (call $str_end (local.get $s)) (i32.const 1)))
    (local.set $pb (i32.add (local.get $pat) (i32.const 1)))
    (local.set $pl (i32.sub (i32.sub (call $str_end (local.get $pat)) (i32.const 1)) (local.get $pb)))
    (if (i32.le_s (local.get $pl) (i32.const 0)) (then (return (i32.const 0))))
    (block $no
      (loop $more
        (br_if $no (i32.gt_u (i32.add (local.get $i) (local.get $pl)) (local.get $se)))
        (if (call $eq_ci (local.get $i) (local.get $pb) (local.get $pl))
          (then (return (i32.const 1))))
        ;; the next character boundary: an escape is \uXXXX (6 bytes) or \x (2 bytes)
        (local.set $i (i32.add (local.get $i)
          (if (result i32) (i32.ne (i32.load8_u (local.get $i)) (i32.const 92))
            (then (i32.const 1))
            (else (if (result i32) (i32.eq (call $at (i32.add (local.get $i) (i32.const 1))) (i32.const 117))
              (then (i32.const 6))
              (else (i32.const 2)))))))
        (br $more)))
    (i32.const 0))

  ;; The first pattern of the array $pats that the string $s contains, or -1.
  (func $match (param $s i32) (param $pats i32) (result i32)
    (local $p i32)
    (local.set $p (call $first (local.get $pats)))
    (block $none
      (loop $more
        (br_if $none (i32.lt_s (local.get $p) (i32.const 0)))
        (if (call $is_string (local.get $p))
          (then (if (call $contains (local.get $s) (local.get $p)) (then (return (local.get $p))))))
        (local.set $p (call $next (local.get $p)))
        (br $more)))
    (i32.const -1))

  ;; The first pattern a message's content contains (a string, or parts with "text"), or -1.
  (func $match_content (param $c i32) (param $pats i32) (result i32)
    (local $part i32) (local $hit i32)
    (if (call $is_string (local.get $c))
      (then (return (call $match (local.get $c) (local.get $pats)))))
    (local.set $part (call $first (local.get $c)))
    (block $none
      (loop $more
        (br_if $none (i32.lt_s (local.get $part) (i32.const 0)))
        (local.set $hit (call $key (local.get $part) (i32.const 80) (i32.const 4)))
        (if (call $is_string (local.get $hit))
          (then
            (local.set $hit (call $match (local.get $hit) (local.get $pats)))
            (if (i32.ge_s (local.get $hit) (i32.const 0)) (then (return (local.get $hit))))))
        (local.set $part (call $next (local.get $part)))
        (br $more)))
    (i32.const -1))

  (func (export "pre_request") (param $ptr i32) (param $len i32) (result i64)
    (local $root i32) (local $pats i32) (local $msg i32) (local $hit i32) (local $out i32)
    (global.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $root (call $ws (local.get $ptr)))
    (local.set $pats
      (call $key (call $key (local.get $root) (i32.const 16) (i32.const 6)) (i32.const 32) (i32.const 8)))
    (local.set $msg
      (call $first
        (call $key (call $key (local.get $root) (i32.const 0) (i32.const 7)) (i32.const 48) (i32.const 8))))
    (block $allow
      (br_if $allow (i32.lt_s (local.get $pats) (i32.const 0)))
      (loop $more
        (br_if $allow (i32.lt_s (local.get $msg) (i32.const 0)))
        (local.set $hit
          (call $match_content (call $key (local.get $msg) (i32.const 64) (i32.const 7)) (local.get $pats)))
        (if (i32.ge_s (local.get $hit) (i32.const 0))
          (then
            (local.set $out (global.get $heap))
            (call $emit (i32.const 128) (i32.const 68))
            (call $emit (i32.add (local.get $hit) (i32.const 1))
                        (i32.sub (i32.sub (call $str_end (local.get $hit)) (i32.const 1))
                                 (i32.add (local.get $hit) (i32.const 1))))
            (call $emit (i32.const 208) (i32.const 4))
            (return (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
                            (i64.extend_i32_u (i32.sub (global.get $heap) (local.get $out)))))))
        (local.set $msg (call $next (local.get $msg)))
        (br $more)))
    (i64.or (i64.shl (i64.const 96) (i64.const 32)) (i64.const 18))) ;; {"action":"allow"}
)
