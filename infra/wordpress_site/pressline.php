<?php
/**
 * Plugin Name: Pressline
 * Description: What Pressline needs of a WordPress site: idempotent post references in post meta,
 *   a REST lookup by reference, trace ids, and signed webhooks back to Pressline.
 *
 * Pressline's WordPress client keys every post it writes by an external reference
 * (post meta `pressline_external_ref`) and looks it up before creating, so retries never make a
 * second post; core REST has no meta query, so this plugin adds `?pressline_external_ref=`.
 *
 * When PRESSLINE_WEBHOOK_URL and PRESSLINE_WEBHOOK_SECRET are defined (the bootstrap writes them
 * into the instance config), post changes are sent to Pressline as Standard Webhooks:
 * headers webhook-id, webhook-timestamp, webhook-signature `v1,<base64 HMAC-SHA256 of id.ts.body>`
 * keyed with the base64-decoded `whsec_` secret; body {"type", "timestamp", "data"}.
 *   - post.status_changed on every status transition of a post;
 *   - post.generate_requested when a post enters `pending` with content and no Pressline
 *     reference: an author asks Pressline to write a draft from it.
 * The send is synchronous (3 s timeout) and not retried; a failure is logged.
 */

if (!defined('ABSPATH')) {
    exit;
}

const PRESSLINE_REF_META = 'pressline_external_ref';
const PRESSLINE_TRACE_META = 'pressline_trace_id';

add_action('init', function () {
    foreach ([PRESSLINE_REF_META, PRESSLINE_TRACE_META] as $key) {
        register_post_meta('post', $key, [
            'type' => 'string',
            'single' => true,
            'show_in_rest' => true,
            'sanitize_callback' => 'sanitize_text_field',
            'auth_callback' => function ($allowed, $meta_key, $post_id) {
                return current_user_can('edit_post', $post_id);
            },
        ]);
    }
});

// Local sites send no mail (there is no sendmail, and nobody to read it).
add_filter('pre_wp_mail', '__return_false');

// GET /wp/v2/posts?pressline_external_ref=KEY&status=any&context=edit finds the post of KEY.
add_filter('rest_post_collection_params', function ($params) {
    $params[PRESSLINE_REF_META] = [
        'description' => 'Limit the result to posts with this Pressline external reference.',
        'type' => 'string',
        'maxLength' => 255,
    ];
    return $params;
});

add_filter('rest_post_query', function ($args, $request) {
    $ref = $request->get_param(PRESSLINE_REF_META);
    if (is_string($ref) && $ref !== '') {
        $args['meta_query'] = [['key' => PRESSLINE_REF_META, 'value' => $ref, 'compare' => '=']];
    }
    return $args;
}, 10, 2);

// Echo the caller's trace id, so a client (and a test) can see it reached WordPress.
add_filter('rest_post_dispatch', function ($response) {
    $trace = $_SERVER['HTTP_X_PRESSLINE_TRACE_ID'] ?? '';
    if ($response instanceof WP_HTTP_Response && preg_match('/^[A-Za-z0-9_-]{1,64}$/', $trace)) {
        $response->header('X-Pressline-Trace-Id', $trace);
    }
    return $response;
});

function pressline_webhooks_enabled(): bool
{
    return defined('PRESSLINE_WEBHOOK_URL') && defined('PRESSLINE_WEBHOOK_SECRET')
        && is_string(PRESSLINE_WEBHOOK_URL) && PRESSLINE_WEBHOOK_URL !== ''
        && is_string(PRESSLINE_WEBHOOK_SECRET) && PRESSLINE_WEBHOOK_SECRET !== '';
}

/** Send one Standard Webhooks event to Pressline; false when it was not delivered. */
function pressline_send_event(string $type, array $data): bool
{
    if (!pressline_webhooks_enabled()) {
        return false;
    }
    $key = base64_decode(preg_replace('/^whsec_/', '', trim(PRESSLINE_WEBHOOK_SECRET)), true);
    if ($key === false || $key === '') {
        error_log('pressline: PRESSLINE_WEBHOOK_SECRET is not a whsec_ base64 secret');
        return false;
    }
    $id = 'msg_' . str_replace('-', '', wp_generate_uuid4());
    $timestamp = (string) time();
    $body = wp_json_encode([
        'type' => $type,
        'timestamp' => gmdate('Y-m-d\TH:i:s\Z'),
        'data' => $data,
    ]);
    $signature = 'v1,' . base64_encode(hash_hmac('sha256', $id . '.' . $timestamp . '.' . $body, $key, true));
    // Not wp_safe_remote_post: it refuses loopback hosts and ports other than 80/443/8080.
    $result = wp_remote_post(PRESSLINE_WEBHOOK_URL, [
        'timeout' => 3,
        'redirection' => 0,
        'body' => $body,
        'headers' => [
            'Content-Type' => 'application/json',
            'webhook-id' => $id,
            'webhook-timestamp' => $timestamp,
            'webhook-signature' => $signature,
        ],
    ]);
    if (is_wp_error($result)) {
        error_log('pressline: webhook ' . $type . ' failed: ' . $result->get_error_message());
        return false;
    }
    $code = (int) wp_remote_retrieve_response_code($result);
    if ($code < 200 || $code >= 300) {
        error_log('pressline: webhook ' . $type . ' answered ' . $code);
        return false;
    }
    return true;
}

// transition_post_status fires inside wp_insert_post, before REST saves the meta: remember the
// transition here and send from wp_after_insert_post, when meta and terms are stored.
add_action('transition_post_status', function ($new, $old, $post) {
    if ($new === $old || $post->post_type !== 'post' || in_array($new, ['auto-draft', 'inherit'], true)) {
        return;
    }
    $GLOBALS['pressline_transitions'][$post->ID] = [$old, $new];
}, 10, 3);

add_action('wp_after_insert_post', function ($post_id, $post) {
    if (empty($GLOBALS['pressline_transitions'][$post_id])) {
        return;
    }
    [$old, $new] = $GLOBALS['pressline_transitions'][$post_id];
    unset($GLOBALS['pressline_transitions'][$post_id]);
    if (!pressline_webhooks_enabled()) {
        return;
    }
    $ref = (string) get_post_meta($post_id, PRESSLINE_REF_META, true);
    pressline_send_event('post.status_changed', [
        'post_id' => (int) $post_id,
        'old_status' => $old,
        'new_status' => $new,
        'title' => get_the_title($post),
        'link' => get_permalink($post_id),
        'external_ref' => $ref,
        'trace_id' => (string) get_post_meta($post_id, PRESSLINE_TRACE_META, true),
        'author' => (int) $post->post_author,
        'modified_gmt' => $post->post_modified_gmt,
    ]);
    $source = trim(html_entity_decode(wp_strip_all_tags($post->post_content), ENT_QUOTES, 'UTF-8'));
    if ($new === 'pending' && $ref === '' && $source !== '') {
        pressline_send_event('post.generate_requested', [
            'post_id' => (int) $post_id,
            'title' => html_entity_decode(get_the_title($post), ENT_QUOTES, 'UTF-8') ?: 'Untitled',
            'source' => $source,
            'publish' => false,
        ]);
    }
}, 10, 2);
