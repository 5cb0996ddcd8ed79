<?php
/**
 * Installs WordPress and (re-)issues Application Passwords from the PHP CLI: no HTTP request to
 * the site itself, so nothing waits on a loopback call php -S cannot answer.
 *
 * Written by Pressline (infra/wordpress.py), run as `php install.php install|users`.
 * Input: environment PRESSLINE_WP_INSTANCE, PRESSLINE_WP_HOST and PRESSLINE_WP_SPEC, a JSON object
 * {title, admin_email, users: [{login, role, email, password}], app_name}. Output: one JSON line.
 */

if (PHP_SAPI !== 'cli') {
    exit(1);
}
$mode = $argv[1] ?? '';
$spec = json_decode((string) getenv('PRESSLINE_WP_SPEC'), true);
if (!in_array($mode, ['install', 'users'], true) || !is_array($spec)) {
    fwrite(STDERR, "usage: PRESSLINE_WP_SPEC=... php install.php install|users\n");
    exit(2);
}
$_SERVER['WORDPRESS_CONFIG'] = (string) getenv('PRESSLINE_WP_INSTANCE');
$_SERVER['HTTP_HOST'] = (string) getenv('PRESSLINE_WP_HOST');
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['SERVER_NAME'] = 'localhost';
$_SERVER['SERVER_PORT'] = '80';
$_SERVER['REQUEST_METHOD'] = 'GET';

if ($mode === 'install') {
    define('WP_INSTALLING', true);
}
require '/usr/share/wordpress/wp-load.php';

// No outgoing HTTP at all from here: wp_install() probes permalinks with loopback requests.
add_filter('pre_http_request', function () {
    return new WP_Error('pressline_offline', 'no HTTP from the installer');
}, 1);
add_filter('pre_wp_mail', '__return_false');

function pressline_out(array $data): void
{
    echo json_encode($data), "\n";
}

if ($mode === 'install') {
    require_once ABSPATH . 'wp-admin/includes/upgrade.php';
    $installed = is_blog_installed();
    if (!$installed) {
        $admin = $spec['users'][0];
        $result = wp_install($spec['title'], $admin['login'], $admin['email'], false, '', $admin['password']);
        if (empty($result['user_id'])) {
            fwrite(STDERR, "wp_install failed\n");
            exit(1);
        }
    }
    update_option('permalink_structure', '/%postname%/');
    update_option('blog_public', '0');
    update_option('default_comment_status', 'closed');
    flush_rewrite_rules(false);
    pressline_out(['installed' => true, 'was_installed' => $installed]);
    exit(0);
}

// users: create the missing ones, keep their login password current, re-issue one app password each.
$out = [];
foreach ($spec['users'] as $u) {
    $user = get_user_by('login', $u['login']);
    if (!$user) {
        $id = wp_insert_user([
            'user_login' => $u['login'],
            'user_pass' => $u['password'],
            'user_email' => $u['email'],
            'role' => $u['role'],
            'display_name' => ucfirst($u['login']),
        ]);
        if (is_wp_error($id)) {
            fwrite(STDERR, 'cannot create user ' . $u['login'] . ': ' . $id->get_error_message() . "\n");
            exit(1);
        }
        $user = get_user_by('id', $id);
    } else {
        wp_set_password($u['password'], $user->ID);
        $user->set_role($u['role']);
    }
    foreach (WP_Application_Passwords::get_user_application_passwords($user->ID) as $item) {
        if ($item['name'] === $spec['app_name']) {
            WP_Application_Passwords::delete_application_password($user->ID, $item['uuid']);
        }
    }
    $created = WP_Application_Passwords::create_new_application_password($user->ID, ['name' => $spec['app_name']]);
    if (is_wp_error($created)) {
        fwrite(STDERR, 'cannot issue an application password: ' . $created->get_error_message() . "\n");
        exit(1);
    }
    $out[$u['login']] = WP_Application_Passwords::chunk_password($created[0]);
}
pressline_out(['app_passwords' => $out]);
